from experiments.benchmark.main import main

main()

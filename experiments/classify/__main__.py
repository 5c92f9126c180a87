from experiments.classify.main import main

main()

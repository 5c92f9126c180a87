from experiments.interpret.main import main

main()

from experiments.train_small.main import main

main()

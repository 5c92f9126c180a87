from experiments.eqtl.main import main

main()

from experiments.audit.main import main

main()

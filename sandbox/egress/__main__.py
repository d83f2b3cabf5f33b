from sandbox.egress.process import main

main()

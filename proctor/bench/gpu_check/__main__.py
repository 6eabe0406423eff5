from proctor.bench.gpu_check.run import main

main()

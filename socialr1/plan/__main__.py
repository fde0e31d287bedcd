from socialr1.plan import main

main()

-- A hosts file: the machines an orchestra may use (pass with --hosts examples/hosts.lua).
host "h1" { address = "10.0.0.4", user = "ubuntu", cores = 2 }
host "h2" { address = "10.0.0.5", user = "ubuntu", cores = 2, port = 22, identity = "~/.ssh/id_ed25519" }
host "h3" { address = "10.0.0.6", user = "ubuntu", cores = 1 }

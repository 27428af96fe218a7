module sextantexample

go 1.19

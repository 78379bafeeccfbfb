from vidfeat.cli import console

console()

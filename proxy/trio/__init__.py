"""The trio shells: they execute what the core decides and own every socket, process and file."""

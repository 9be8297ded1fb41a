"""Small functions that take a process group and tensors: degrees, process groups, sequence split, attention."""

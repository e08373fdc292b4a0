"""What evolves: strategy records, the seed library of published strategies with their
reference kernels, evolution operators, and the archive."""

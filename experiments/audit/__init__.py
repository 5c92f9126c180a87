"""Privacy auditing: canary lower bounds and membership inference vs the accountant's epsilon."""

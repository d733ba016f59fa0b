"""Attack plugins: each module registers one attack."""

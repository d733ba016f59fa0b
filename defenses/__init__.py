"""Quality-control defense plugins: each module registers one defense."""

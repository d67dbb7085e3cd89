"""ftplan's front ends: the `ftplan` command line and the Textual app."""

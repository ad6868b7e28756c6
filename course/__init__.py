"""The course kit: four assignments, their autograders and an instructor's guide (README.md)."""

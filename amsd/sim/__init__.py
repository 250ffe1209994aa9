"""Simulated meters for tests, demos and bench work: amsd's own frame encoder (`encode`), meter
profiles with evolving values (`meters`) and the `amsd simulate` pty/TCP server (`simulate`)."""

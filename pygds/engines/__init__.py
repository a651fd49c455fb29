"""I/O engines behind the front doors: each a self-contained unit behind `engines.base`, listed in
`engines.registry`."""

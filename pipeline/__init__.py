"""Image I/O, colour maths, the retouching models and full-resolution rendering."""

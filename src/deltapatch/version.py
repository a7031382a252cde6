"""The library version, in its own module so modules inside the package need not import the
package root (which imports them) to stamp it on patch files, graphs and server metadata."""

__version__ = "0.1.0"

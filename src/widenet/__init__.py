from widenet._version import __version__

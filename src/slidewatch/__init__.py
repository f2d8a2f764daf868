"""slidewatch: landslide detection in satellite and aerial imagery with deep learning."""

__version__ = "0.1.0"

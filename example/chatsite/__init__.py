"""Django project of the example chat."""

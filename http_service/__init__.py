"""The HTTP service and web page: synchronous predictions on the workers '"s inference path."""

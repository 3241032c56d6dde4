"""The HTTP service and web page: synchronous predictions on the inference path of the workers."""

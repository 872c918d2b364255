"""HTTP routes: parse and validate, call the data plane or the registry, shape the response."""

"""What the worker and the client share at run time: settings, logging, the Temporal
connection and the embedded dev server."""

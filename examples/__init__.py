"""Example pipelines and the tools they use (STEPFLOW_TOOL_MODULES=examples.tools)."""

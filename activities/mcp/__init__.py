"""Tools of Model Context Protocol servers, as Stepflow tools named `<server>.<tool>`.

- `definition`: an MCP tool as a `ToolDefinition`, checked against the server's JSON schema;
- `content`: what a tool call's result becomes (text, JSON, binary blocks) or its error;
- `connection`: one server's session, held open and started again when it ends;
- `hub`: a worker's servers and their tools (a registry `ToolSource`), and the calls;
- `activity`: the dynamic activity that runs `tool_<server>.<tool>`;
- `discovery`: reading the servers' tools once, for `stepflow validate` and `stepflow tools`.

Servers are configured in `STEPFLOW_MCP_SERVERS` or the project's file
(`runtime.mcp_config`).
"""

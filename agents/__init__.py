"""Who proposes kernels: LLM backends, roles and prompts, the run loop, the CLI, the
archive viewer and reports. Also the `cubepilot` command (agents.cli)."""

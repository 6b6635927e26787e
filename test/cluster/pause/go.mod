module agentflow.dev/test/pause

go 1.24

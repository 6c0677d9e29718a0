"""The JSON API: app factory, dependencies, problem documents, thin routes and schemas."""

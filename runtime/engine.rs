//! The engine: open files, plan the workspace, inspect parts.

//! The diagnostic toolset (read-only unless marked). Being written.

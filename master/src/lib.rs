//! mw master library (in progress).

//! Analyses over people's event sequences (SPEC §7, §15). Only attribution lives here so far;
//! funnels, retention and cohort tables move here with the core restructuring.

pub mod attribution;

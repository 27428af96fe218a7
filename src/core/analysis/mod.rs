//! Analyses over people's event histories that are more than one metric: the revenue bridge.

pub mod revenue;

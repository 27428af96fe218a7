//! A project's events as the analyses read them: the columnar table and its person order.

pub mod person_order;
pub mod table;

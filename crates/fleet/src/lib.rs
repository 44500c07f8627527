//! The kiosk's link to a fleet, as its own service: the [`uplink`] publishes the scan log and
//! the kiosk's health to an MQTT broker.

pub mod uplink;

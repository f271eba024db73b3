//! Version a of the stamp handler; the logic is shared with the other version.

const VERSION: &str = "v-a";

#[path = "../../stamp/stamp.rs"]
mod stamp;

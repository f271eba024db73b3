//! Version b of the stamp handler; the logic is shared with the other version.

const VERSION: &str = "v-b";

#[path = "../../stamp/stamp.rs"]
mod stamp;

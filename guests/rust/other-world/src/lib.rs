//! A component that implements some other world, so tests can check that
//! `warren check` refuses it and says what is missing.

wit_bindgen::generate!({ path: "wit", world: "other" });

struct Other;

impl Guest for Other {
    fn run() -> String {
        "not a warren handler".to_string()
    }
}

export!(Other);

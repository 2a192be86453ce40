//! Envoy's geoip HTTP filter (MaxMind provider) in front of Tollgate, reading a
//! country database the test writes at set-up with PyPI's `mmdb-writer`
//! (pinned, installed into `.venv` by `make test`): no binary database is ever
//! committed.
//!
//! The filters are the ones the README's "Country" section tells operators to
//! add to the sample: the client's own copy of the country header removed
//! before any filter runs (an early header mutation), then the geoip filter,
//! then Tollgate.

use super::artifacts::repo_path;
use super::envoy::EnvoyConfig;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The header the geoip filter writes and `geoip.country_header` names.
pub const COUNTRY_HEADER: &str = "x-geo-country";

/// mmdb-writer, pinned (the Makefile installs the same).
const WRITER: &str = "mmdb-writer==0.2.7";

/// A MaxMind country database (GeoLite2-Country layout: `country.iso_code`) in a
/// temporary directory, removed when dropped.
pub struct CountryDatabase {
    dir: tempfile::TempDir,
}

impl CountryDatabase {
    /// Maps each address block to a country code.
    pub fn write(blocks: &[(&str, &str)]) -> CountryDatabase {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("countries.mmdb");
        let python = repo_path(".venv/bin/python3");
        let script = r#"
import json, sys
from netaddr import IPSet
from mmdb_writer import MMDBWriter
writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country", languages=["en"],
                    description={"en": "Tollgate test countries"})
for block, code in json.loads(sys.argv[2]):
    writer.insert_network(IPSet([block]), {"country": {"iso_code": code, "names": {"en": code}}})
writer.to_db_file(sys.argv[1])
"#;
        let output = Command::new(&python)
            .args(["-c", script])
            .arg(&path)
            .arg(serde_json::to_string(blocks).unwrap())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        if !output.status.success() {
            panic!(
                "writing the test country database failed (is {WRITER} installed? \
                 `make test` installs it: .venv/bin/pip install {WRITER}):\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        CountryDatabase { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("countries.mmdb")
    }
}

/// Puts Envoy's geoip filter before Tollgate in `config`, on `database`. With
/// `strip_client_copies` (what the README prescribes), a country header the
/// client sent is removed before any filter sees it; without it, the geoip
/// filter overwrites the header only for addresses its database knows.
pub fn add_geoip(config: &mut EnvoyConfig, database: &Path, strip_client_copies: bool) {
    let strip = format!(
        "          early_header_mutation_extensions:
          - name: envoy.http.early_header_mutation.header_mutation
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
              mutations:
              - remove: {COUNTRY_HEADER}
"
    );
    let filter = format!(
        "          - name: envoy.filters.http.geoip
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.geoip.v3.Geoip
              provider:
                name: envoy.geoip_providers.maxmind
                typed_config:
                  \"@type\": type.googleapis.com/envoy.extensions.geoip_providers.maxmind.v3.MaxMindConfig
                  common_provider_config:
                    geo_field_keys:
                      country: {COUNTRY_HEADER}
                  country_db_path: {}
",
        database.display()
    );
    let anchor = "          http_filters:\n          - name: tollgate\n";
    let replacement = format!(
        "{}          http_filters:\n{filter}          - name: tollgate\n",
        if strip_client_copies {
            strip.as_str()
        } else {
            ""
        }
    );
    config.replace(anchor, &replacement);
}

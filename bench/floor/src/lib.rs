//! A minimal proxy-wasm HTTP filter: reads `authorization` and removes it.
//! Whatever a token filter does beyond this is its own cost.
//!
//! With a plugin configuration `"<probe> <count>"`, it also makes one kind of
//! host call `count` times per request, so that `make bench` can price each
//! host call Tollgate makes: (CPU per request with the probe − without) / count.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(FloorRoot { probe: Rc::new(Probe::None), histogram: None })
    });
}}

/// One kind of host call, made `count` times per request.
enum Probe {
    None,
    /// `get_http_request_headers`: the whole request header map.
    HeaderMap(u32),
    /// `set_http_request_header` of a new header each time.
    SetHeader(u32),
    /// `set_http_request_headers`: the whole map, with `count` headers added.
    SetHeaderMap(u32),
    /// `get_current_time_nanoseconds`.
    Clock(u32),
    /// `get_property(["source", "address"])`.
    SourceAddress(u32),
    /// `get_shared_data` of a 512-byte value.
    SharedRead(u32),
    /// `get_shared_data` then `set_shared_data` with its CAS (one rate-limit update).
    SharedUpdate(u32),
    /// `record_metric` on a histogram.
    Histogram(u32),
}

const SHARED_KEY: &str = "floor/probe";

impl Probe {
    fn parse(config: &str) -> Result<Probe, String> {
        let mut words = config.split_whitespace();
        let (Some(name), Some(count), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("expected \"<probe> <count>\", got {config:?}"));
        };
        let n: u32 = count.parse().map_err(|_| format!("bad count {count:?}"))?;
        Ok(match name {
            "header_map" => Probe::HeaderMap(n),
            "set_header" => Probe::SetHeader(n),
            "set_header_map" => Probe::SetHeaderMap(n),
            "clock" => Probe::Clock(n),
            "source_address" => Probe::SourceAddress(n),
            "shared_read" => Probe::SharedRead(n),
            "shared_update" => Probe::SharedUpdate(n),
            "histogram" => Probe::Histogram(n),
            other => return Err(format!("unknown probe {other:?}")),
        })
    }

    fn run(&self, histogram: Option<u32>) {
        match *self {
            Probe::None => {}
            Probe::HeaderMap(n) => (0..n).for_each(|_| {
                let _ = hostcalls::get_map(proxy_wasm::types::MapType::HttpRequestHeaders);
            }),
            Probe::SetHeader(n) => (0..n).for_each(|i| {
                let _ = hostcalls::set_map_value(
                    proxy_wasm::types::MapType::HttpRequestHeaders,
                    &format!("x-probe-{i}"),
                    Some("a-value-as-long-as-a-subject"),
                );
            }),
            Probe::SetHeaderMap(n) => {
                let t = proxy_wasm::types::MapType::HttpRequestHeaders;
                if let Ok(map) = hostcalls::get_map(t) {
                    let added: Vec<(String, String)> = (0..n)
                        .map(|i| {
                            (
                                format!("x-probe-{i}"),
                                "a-value-as-long-as-a-subject".into(),
                            )
                        })
                        .collect();
                    let all: Vec<(&str, &str)> = map
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .chain(added.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .collect();
                    let _ = hostcalls::set_map(t, all);
                }
            }
            Probe::Clock(n) => (0..n).for_each(|_| {
                let _ = hostcalls::get_current_time();
            }),
            Probe::SourceAddress(n) => (0..n).for_each(|_| {
                let _ = hostcalls::get_property(vec!["source", "address"]);
            }),
            Probe::SharedRead(n) => (0..n).for_each(|_| {
                let _ = hostcalls::get_shared_data(SHARED_KEY);
            }),
            Probe::SharedUpdate(n) => (0..n).for_each(|_| {
                if let Ok((Some(mut value), cas)) = hostcalls::get_shared_data(SHARED_KEY) {
                    if let Some(b) = value.first_mut() {
                        *b = b.wrapping_add(1);
                    }
                    let _ = hostcalls::set_shared_data(SHARED_KEY, Some(&value), cas);
                }
            }),
            Probe::Histogram(n) => (0..n).for_each(|i| {
                if let Some(id) = histogram {
                    let _ = hostcalls::record_metric(id, u64::from(i));
                }
            }),
        }
    }
}

struct FloorRoot {
    probe: Rc<Probe>,
    histogram: Option<u32>,
}

impl Context for FloorRoot {}

impl RootContext for FloorRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        if config.iter().all(u8::is_ascii_whitespace) {
            return true;
        }
        match Probe::parse(&String::from_utf8_lossy(&config)) {
            Ok(probe) => {
                let _ = hostcalls::set_shared_data(SHARED_KEY, Some(&[0u8; 512]), None);
                if let Probe::Histogram(_) = probe {
                    self.histogram =
                        hostcalls::define_metric(MetricType::Histogram, "floor.probe").ok();
                }
                self.probe = Rc::new(probe);
                true
            }
            Err(e) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("floor: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Floor {
            probe: self.probe.clone(),
            histogram: self.histogram,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Floor {
    probe: Rc<Probe>,
    histogram: Option<u32>,
}

impl Context for Floor {}

impl HttpContext for Floor {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self
            .get_http_request_header_bytes("authorization")
            .is_some()
        {
            self.set_http_request_header("authorization", None);
        }
        self.probe.run(self.histogram);
        Action::Continue
    }
}

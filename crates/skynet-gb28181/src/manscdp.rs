//! MANSCDP (GB/T 28181 Annex A): the XML bodies of `MESSAGE` requests. Bodies come in
//! GB2312 (in practice GBK), GB18030 or UTF-8, whatever the declaration says; they are
//! decoded with `encoding_rs` and read with `quick-xml` as a stream (a 10,000-channel
//! catalog never becomes a tree). Catalog items may be written as child elements or as
//! attributes. Multi-part catalogs are put together by [`CatalogAssembler`].

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use encoding_rs::{Encoding, GB18030, GBK, UTF_8};
use quick_xml::events::{BytesStart, Event};

/// Bounds on one body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body: usize,
    /// Items in one message (one part of a catalog).
    pub max_items: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 1024 * 1024,
            max_items: 10_000,
            max_depth: 16,
        }
    }
}

/// Why a MANSCDP body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManscdpError {
    #[error("MANSCDP body over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("MANSCDP body declares an unsupported encoding")]
    UnsupportedEncoding,
    #[error("MANSCDP body is not valid {0}")]
    WrongEncoding(&'static str),
    #[error("MANSCDP XML: {0}")]
    Xml(String),
    #[error("MANSCDP root element {0} unknown")]
    UnknownRoot(String),
    #[error("MANSCDP CmdType {0} unknown")]
    UnknownCmdType(String),
    #[error("MANSCDP element {0} missing")]
    Missing(&'static str),
    #[error("MANSCDP element {0} has a bad value")]
    BadValue(&'static str),
    #[error("MANSCDP catalog has more than {0} items")]
    TooManyItems(usize),
}

/// Decodes a body: the XML declaration's encoding when it names UTF-8, GB2312, GBK or
/// GB18030 (GB2312 is read as GBK, its superset, as every platform writes GBK under that
/// name). Devices that declare GB2312 and send UTF-8 are common: valid UTF-8 with
/// non-ASCII text is taken as UTF-8 whatever the declaration. Bytes valid in neither are
/// refused.
pub fn decode_body(bytes: &[u8], limits: &Limits) -> Result<String, ManscdpError> {
    if bytes.len() > limits.max_body {
        return Err(ManscdpError::TooLarge(limits.max_body));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let declared = declared_encoding(bytes)?;
    if let Ok(s) = std::str::from_utf8(bytes) {
        return Ok(s.to_owned());
    }
    let enc = match declared {
        Some(e) if e == UTF_8 => return Err(ManscdpError::WrongEncoding("UTF-8")),
        Some(e) => e,
        None => GB18030,
    };
    enc.decode_without_bom_handling_and_without_replacement(bytes)
        .map(|s| s.into_owned())
        .ok_or(ManscdpError::WrongEncoding(enc.name()))
}

fn declared_encoding(bytes: &[u8]) -> Result<Option<&'static Encoding>, ManscdpError> {
    let head = &bytes[..bytes.len().min(256)];
    if !head.starts_with(b"<?xml") {
        return Ok(None);
    }
    let Some(end) = head.windows(2).position(|w| w == b"?>") else {
        return Err(ManscdpError::Xml("unterminated XML declaration".into()));
    };
    let decl = String::from_utf8_lossy(&head[..end]);
    let Some(i) = decl.find("encoding") else {
        return Ok(None);
    };
    let rest = decl[i + 8..]
        .trim_start()
        .strip_prefix('=')
        .map(str::trim_start)
        .unwrap_or("");
    let q = rest.chars().next().filter(|c| *c == '"' || *c == '\'');
    let Some(q) = q else {
        return Err(ManscdpError::Xml("XML declaration encoding".into()));
    };
    let label = rest[1..].split(q).next().unwrap_or("");
    match Encoding::for_label(label.trim().as_bytes()) {
        Some(e) if e == UTF_8 || e == GBK || e == GB18030 => Ok(Some(e)),
        _ => Err(ManscdpError::UnsupportedEncoding),
    }
}

/// Encodes text as GB2312 is written on the wire (GBK).
pub fn encode_gb(text: &str) -> Vec<u8> {
    GBK.encode(text).0.into_owned()
}

/// The root elements of MANSCDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    Query,
    Control,
    Notify,
    Response,
}

/// The CmdTypes skynet knows (GB/T 28181-2016 Annex A); any other is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdType {
    Keepalive,
    Catalog,
    DeviceInfo,
    DeviceStatus,
    DeviceControl,
    DeviceConfig,
    ConfigDownload,
    RecordInfo,
    Alarm,
    MediaStatus,
    MobilePosition,
    Broadcast,
    PresetQuery,
}

impl CmdType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Keepalive" => Self::Keepalive,
            "Catalog" => Self::Catalog,
            "DeviceInfo" => Self::DeviceInfo,
            "DeviceStatus" => Self::DeviceStatus,
            "DeviceControl" => Self::DeviceControl,
            "DeviceConfig" => Self::DeviceConfig,
            "ConfigDownload" => Self::ConfigDownload,
            "RecordInfo" => Self::RecordInfo,
            "Alarm" => Self::Alarm,
            "MediaStatus" => Self::MediaStatus,
            "MobilePosition" => Self::MobilePosition,
            "Broadcast" => Self::Broadcast,
            "PresetQuery" => Self::PresetQuery,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keepalive => "Keepalive",
            Self::Catalog => "Catalog",
            Self::DeviceInfo => "DeviceInfo",
            Self::DeviceStatus => "DeviceStatus",
            Self::DeviceControl => "DeviceControl",
            Self::DeviceConfig => "DeviceConfig",
            Self::ConfigDownload => "ConfigDownload",
            Self::RecordInfo => "RecordInfo",
            Self::Alarm => "Alarm",
            Self::MediaStatus => "MediaStatus",
            Self::MobilePosition => "MobilePosition",
            Self::Broadcast => "Broadcast",
            Self::PresetQuery => "PresetQuery",
        }
    }
}

/// An item's status as platforms write it (`ON`/`OFF`, sometimes `ONLINE`/`OFFLINE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ItemStatus {
    On,
    Off,
    #[default]
    Unknown,
}

/// One catalog item (a device, a channel, a business group, …).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CatalogItem {
    pub device_id: String,
    pub name: String,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub civil_code: Option<String>,
    pub parental: Option<bool>,
    pub parent_id: Option<String>,
    pub longitude: Option<f64>,
    pub latitude: Option<f64>,
    pub status: ItemStatus,
}

/// Whether `id` is a GB/T 28181 code: 20 decimal digits.
pub fn is_gb_id(id: &str) -> bool {
    id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit())
}

/// The type code of a 20-digit id: digits 11 to 13 (GB/T 28181-2016 Annex D, Table D.1:
/// 111-130 front-end main devices such as DVR/NVR, 131 camera, 132 network camera (IPC),
/// 133-139 peripherals, 200-211 platform servers, 215 business group, 216 virtual
/// organisation).
pub fn type_code(id: &str) -> Option<u16> {
    if !is_gb_id(id) {
        return None;
    }
    id[10..13].parse().ok()
}

/// Whether the id names a camera (type 131) or a network camera (132).
pub fn is_camera_id(id: &str) -> bool {
    matches!(type_code(id), Some(131 | 132))
}

impl CatalogItem {
    /// The ids this item's ParentID names (some platforms write a `/`-separated path).
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent_id
            .as_deref()
            .unwrap_or("")
            .split('/')
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    fn set(&mut self, field: &str, value: &str) -> Result<(), ManscdpError> {
        let v = value.trim();
        let opt = || (!v.is_empty()).then(|| v.to_owned());
        match field {
            "DeviceID" => self.device_id = v.to_owned(),
            "Name" => self.name = v.to_owned(),
            "Manufacturer" => self.manufacturer = opt(),
            "Model" => self.model = opt(),
            "CivilCode" => self.civil_code = opt(),
            "ParentID" => self.parent_id = opt(),
            "Parental" => {
                self.parental = match v {
                    "" => None,
                    "1" => Some(true),
                    "0" => Some(false),
                    _ => return Err(ManscdpError::BadValue("Parental")),
                }
            }
            "Longitude" | "Latitude" => {
                let n = if v.is_empty() {
                    None
                } else {
                    let n: f64 = v
                        .parse()
                        .map_err(|_| ManscdpError::BadValue("Longitude/Latitude"))?;
                    // 0,0 is how platforms write "unknown".
                    (n.is_finite() && n != 0.0).then_some(n)
                };
                let ok = match (field, n) {
                    ("Longitude", Some(x)) => (-180.0..=180.0).contains(&x),
                    (_, Some(y)) => (-90.0..=90.0).contains(&y),
                    _ => true,
                };
                if !ok {
                    return Err(ManscdpError::BadValue("Longitude/Latitude"));
                }
                if field == "Longitude" {
                    self.longitude = n;
                } else {
                    self.latitude = n;
                }
            }
            "Status" => {
                self.status = match v.to_ascii_uppercase().as_str() {
                    "ON" | "ONLINE" | "OK" => ItemStatus::On,
                    "OFF" | "OFFLINE" => ItemStatus::Off,
                    _ => ItemStatus::Unknown,
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// One part of a Catalog response.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CatalogPart {
    pub sn: u32,
    pub device_id: String,
    pub sum_num: u32,
    pub items: Vec<CatalogItem>,
    /// Items dropped for an id that is not 20 digits.
    pub skipped: u32,
}

/// A parsed MANSCDP body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A keepalive notify; `status` is usually `OK`.
    Keepalive {
        sn: u32,
        device_id: String,
        status: String,
    },
    /// One part of a catalog response.
    Catalog(CatalogPart),
    /// Another known command (acknowledged, not acted upon yet).
    Other {
        root: Root,
        cmd_type: CmdType,
        sn: u32,
        device_id: String,
    },
}

impl Body {
    pub fn device_id(&self) -> &str {
        match self {
            Self::Keepalive { device_id, .. } | Self::Other { device_id, .. } => device_id,
            Self::Catalog(p) => &p.device_id,
        }
    }
}

fn xml_err(e: impl std::fmt::Display) -> ManscdpError {
    ManscdpError::Xml(e.to_string())
}

fn attrs(start: &BytesStart<'_>) -> Result<Vec<(String, String)>, ManscdpError> {
    let mut out = Vec::new();
    for a in start.attributes() {
        let a = a.map_err(xml_err)?;
        let v = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(xml_err)?;
        out.push((a.key.local_name().as_ref().to_string(), v.into_owned()));
    }
    Ok(out)
}

/// Decodes and parses a body.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Body, ManscdpError> {
    let text = decode_body(bytes, limits)?;
    parse_str(&text, limits)
}

/// Parses a body already decoded.
pub fn parse_str(text: &str, limits: &Limits) -> Result<Body, ManscdpError> {
    let mut reader = quick_xml::Reader::from_str(text);
    // Element names from the root down.
    let mut path: Vec<String> = Vec::new();
    let mut text_buf = String::new();
    let mut root: Option<Root> = None;
    let mut fields: HashMap<&'static str, String> = HashMap::new();
    let mut items: Vec<CatalogItem> = Vec::new();
    let mut item: Option<CatalogItem> = None;
    let mut skipped = 0u32;
    let mut done = false;
    loop {
        let ev = reader.read_event().map_err(xml_err)?;
        let (start, empty) = match &ev {
            Event::Start(s) => (Some(s), false),
            Event::Empty(s) => (Some(s), true),
            _ => (None, false),
        };
        if let Some(s) = start {
            if done {
                return Err(ManscdpError::Xml("content after the root element".into()));
            }
            let name = s.local_name().as_ref().to_string();
            if path.len() >= limits.max_depth {
                return Err(ManscdpError::Xml("nested too deep".into()));
            }
            if path.is_empty() {
                root = Some(match name.as_str() {
                    "Query" => Root::Query,
                    "Control" => Root::Control,
                    "Notify" => Root::Notify,
                    "Response" => Root::Response,
                    _ => return Err(ManscdpError::UnknownRoot(name)),
                });
            }
            // An Item directly under DeviceList (root/DeviceList/Item).
            if path.len() == 2 && path[1] == "DeviceList" && name == "Item" {
                if items.len() >= limits.max_items {
                    return Err(ManscdpError::TooManyItems(limits.max_items));
                }
                let mut it = CatalogItem::default();
                for (k, v) in attrs(s)? {
                    it.set(&k, &v)?;
                }
                if empty {
                    finish_item(it, &mut items, &mut skipped);
                } else {
                    item = Some(it);
                }
            }
            if !empty {
                path.push(name);
                text_buf.clear();
            } else if path.is_empty() {
                done = true;
            }
            continue;
        }
        match ev {
            Event::Text(t) => text_buf.push_str(&t.xml10_content()),
            Event::CData(t) => text_buf.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let c = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(xml_err)?
                } else {
                    match r.xml10_content().as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        _ => return Err(ManscdpError::Xml("unknown entity".into())),
                    }
                };
                text_buf.extend(c);
            }
            Event::End(_) => {
                let Some(name) = path.pop() else {
                    return Err(ManscdpError::Xml("end tag without start".into()));
                };
                match path.len() {
                    1 => {
                        let key = match name.as_str() {
                            "CmdType" => Some("CmdType"),
                            "SN" => Some("SN"),
                            "DeviceID" => Some("DeviceID"),
                            "SumNum" => Some("SumNum"),
                            "Status" => Some("Status"),
                            _ => None,
                        };
                        if let Some(k) = key {
                            fields.insert(k, text_buf.trim().to_owned());
                        }
                    }
                    2 if name == "Item" && path[1] == "DeviceList" => {
                        if let Some(it) = item.take() {
                            finish_item(it, &mut items, &mut skipped);
                        }
                    }
                    3 if path[1] == "DeviceList" && path[2] == "Item" => {
                        if let Some(it) = item.as_mut() {
                            it.set(&name, &text_buf)?;
                        }
                    }
                    0 => done = true,
                    _ => {}
                }
                text_buf.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !path.is_empty() || !done {
        return Err(ManscdpError::Xml("truncated document".into()));
    }
    let root = root.ok_or(ManscdpError::Missing("root element"))?;
    let cmd = fields
        .remove("CmdType")
        .ok_or(ManscdpError::Missing("CmdType"))?;
    let cmd_type =
        CmdType::parse(&cmd).ok_or(ManscdpError::UnknownCmdType(cmd.chars().take(32).collect()))?;
    let sn: u32 = fields
        .get("SN")
        .ok_or(ManscdpError::Missing("SN"))?
        .parse()
        .map_err(|_| ManscdpError::BadValue("SN"))?;
    let device_id = fields
        .remove("DeviceID")
        .ok_or(ManscdpError::Missing("DeviceID"))?;
    if !is_gb_id(&device_id) {
        return Err(ManscdpError::BadValue("DeviceID"));
    }
    Ok(match (root, cmd_type) {
        (Root::Notify, CmdType::Keepalive) => Body::Keepalive {
            sn,
            device_id,
            status: fields.remove("Status").unwrap_or_default(),
        },
        (Root::Response, CmdType::Catalog) => {
            let sum_num: u32 = fields
                .get("SumNum")
                .ok_or(ManscdpError::Missing("SumNum"))?
                .parse()
                .map_err(|_| ManscdpError::BadValue("SumNum"))?;
            Body::Catalog(CatalogPart {
                sn,
                device_id,
                sum_num,
                items,
                skipped,
            })
        }
        _ => Body::Other {
            root,
            cmd_type,
            sn,
            device_id,
        },
    })
}

fn finish_item(it: CatalogItem, items: &mut Vec<CatalogItem>, skipped: &mut u32) {
    if is_gb_id(&it.device_id) {
        items.push(it);
    } else {
        *skipped += 1;
    }
}

/// A complete catalog of one lower platform.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalog {
    pub device_id: String,
    pub sn: u32,
    pub items: Vec<CatalogItem>,
}

impl Catalog {
    /// The items skynet may INVITE: leaves (Parental not 1, no other item's parent) whose
    /// id is of camera type (131, 132).
    pub fn cameras(&self) -> impl Iterator<Item = &CatalogItem> {
        let parents: HashSet<&str> = self.items.iter().flat_map(CatalogItem::parents).collect();
        self.items.iter().filter(move |i| {
            i.parental != Some(true)
                && !parents.contains(i.device_id.as_str())
                && is_camera_id(&i.device_id)
        })
    }
}

struct Pending {
    sum_num: u32,
    seen: HashSet<String>,
    items: Vec<CatalogItem>,
    started: Instant,
}

/// Puts multi-part catalog responses together by (platform, SN) until `SumNum` distinct
/// items have come. Bounded: at most `max_items` items and `max_pending` catalogs at once;
/// an incomplete catalog is dropped after `timeout`.
pub struct CatalogAssembler {
    pending: HashMap<(String, u32), Pending>,
    pub max_items: u32,
    pub max_pending: usize,
    pub timeout: Duration,
}

impl Default for CatalogAssembler {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
            max_items: 100_000,
            max_pending: 64,
            timeout: Duration::from_secs(60),
        }
    }
}

/// An incomplete catalog given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abandoned {
    pub device_id: String,
    pub sn: u32,
    pub got: usize,
    pub sum_num: u32,
}

impl CatalogAssembler {
    /// An assembler holding at most `max_items` per catalog and `max_pending` catalogs,
    /// each given up on after `timeout`.
    pub fn new(max_items: u32, max_pending: usize, timeout: Duration) -> Self {
        Self {
            pending: HashMap::new(),
            max_items,
            max_pending: max_pending.max(1),
            timeout,
        }
    }

    /// Adds one part; returns the catalog once every item has come.
    pub fn push(
        &mut self,
        part: CatalogPart,
        now: Instant,
    ) -> Result<Option<Catalog>, ManscdpError> {
        if part.sum_num > self.max_items {
            return Err(ManscdpError::TooManyItems(self.max_items as usize));
        }
        let key = (part.device_id.clone(), part.sn);
        if !self.pending.contains_key(&key) && self.pending.len() >= self.max_pending {
            // Make room: the oldest goes.
            if let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| k.clone())
            {
                self.pending.remove(&oldest);
            }
        }
        let p = self.pending.entry(key.clone()).or_insert_with(|| Pending {
            sum_num: part.sum_num,
            seen: HashSet::new(),
            items: Vec::new(),
            started: now,
        });
        for it in part.items {
            if p.seen.len() as u32 >= p.sum_num {
                break;
            }
            if p.seen.insert(it.device_id.clone()) {
                p.items.push(it);
            }
        }
        if p.seen.len() as u32 >= p.sum_num
            && let Some(p) = self.pending.remove(&key)
        {
            return Ok(Some(Catalog {
                device_id: key.0,
                sn: key.1,
                items: p.items,
            }));
        }
        Ok(None)
    }

    /// Drops the catalogs that have waited longer than the timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<Abandoned> {
        let timeout = self.timeout;
        let mut out = Vec::new();
        self.pending.retain(|(dev, sn), p| {
            let keep = now.saturating_duration_since(p.started) <= timeout;
            if !keep {
                out.push(Abandoned {
                    device_id: dev.clone(),
                    sn: *sn,
                    got: p.items.len(),
                    sum_num: p.sum_num,
                });
            }
            keep
        });
        out
    }
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

/// A `<Query>` for a command (`Catalog`, `DeviceInfo`, `DeviceStatus`, …), GB2312 on the wire.
pub fn query(cmd: CmdType, sn: u32, device_id: &str) -> Vec<u8> {
    let s = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Query>\r\n<CmdType>{}</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n</Query>\r\n",
        cmd.as_str(),
        esc(device_id)
    );
    encode_gb(&s)
}

/// The Catalog query sent after registration and periodically.
pub fn catalog_query(sn: u32, device_id: &str) -> Vec<u8> {
    query(CmdType::Catalog, sn, device_id)
}

/// A keepalive `<Notify>` (what a lower platform sends; used by tests and the scripted peer).
pub fn keepalive_notify(sn: u32, device_id: &str) -> Vec<u8> {
    encode_gb(&format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n",
        esc(device_id)
    ))
}

/// One part of a catalog response, element style, GB2312 (what a lower platform sends).
pub fn catalog_response(sn: u32, device_id: &str, sum_num: u32, items: &[CatalogItem]) -> Vec<u8> {
    let mut s = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n<SumNum>{sum_num}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n",
        esc(device_id),
        items.len()
    );
    for it in items {
        let _ = write!(
            s,
            "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Name>{}</Name>\r\n",
            esc(&it.device_id),
            esc(&it.name)
        );
        if let Some(p) = it.parental {
            let _ = write!(s, "<Parental>{}</Parental>\r\n", u8::from(p));
        }
        if let Some(p) = &it.parent_id {
            let _ = write!(s, "<ParentID>{}</ParentID>\r\n", esc(p));
        }
        if let Some(x) = it.longitude {
            let _ = write!(s, "<Longitude>{x}</Longitude>\r\n");
        }
        if let Some(y) = it.latitude {
            let _ = write!(s, "<Latitude>{y}</Latitude>\r\n");
        }
        let st = match it.status {
            ItemStatus::On => "ON",
            ItemStatus::Off => "OFF",
            ItemStatus::Unknown => "",
        };
        let _ = write!(s, "<Status>{st}</Status>\r\n</Item>\r\n");
    }
    s.push_str("</DeviceList>\r\n</Response>\r\n");
    encode_gb(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLATFORM: &str = "34020000002000000001";

    fn l() -> Limits {
        Limits::default()
    }

    #[test]
    fn a_gb2312_element_style_catalog_is_decoded_and_its_camera_leaves_found() {
        let xml = "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>17430</SN>\r\n<DeviceID>34020000002000000001</DeviceID>\r\n<SumNum>4</SumNum>\r\n<DeviceList Num=\"4\">\r\n\
<Item><DeviceID>34020000002150000001</DeviceID><Name>城东分局</Name><Parental>1</Parental></Item>\r\n\
<Item><DeviceID>34020000001180000001</DeviceID><Name>解放路NVR</Name><Parental>1</Parental><ParentID>34020000002150000001</ParentID></Item>\r\n\
<Item><DeviceID>34020000001320000001</DeviceID><Name>解放路与人民路口</Name><Manufacturer>Hikvision</Manufacturer><Parental>0</Parental><ParentID>34020000001180000001</ParentID><Longitude>117.2272</Longitude><Latitude>31.8206</Latitude><Status>ON</Status></Item>\r\n\
<Item><DeviceID>34020000001340000001</DeviceID><Name>报警输入</Name><Parental>0</Parental><ParentID>34020000001180000001</ParentID><Status>OFF</Status></Item>\r\n\
</DeviceList>\r\n</Response>\r\n";
        let bytes = encode_gb(xml);
        assert!(
            std::str::from_utf8(&bytes).is_err(),
            "the test body really is GB2312"
        );
        let Body::Catalog(part) = parse(&bytes, &l()).unwrap() else {
            panic!("not a catalog")
        };
        assert_eq!((part.sn, part.sum_num, part.items.len()), (17430, 4, 4));
        let cam = &part.items[2];
        assert_eq!(cam.name, "解放路与人民路口");
        assert_eq!(cam.longitude, Some(117.2272));
        assert_eq!(cam.status, ItemStatus::On);
        let mut asm = CatalogAssembler::default();
        let cat = asm.push(part, Instant::now()).unwrap().unwrap();
        let cams: Vec<_> = cat.cameras().map(|c| c.device_id.as_str()).collect();
        assert_eq!(cams, ["34020000001320000001"]);
    }

    #[test]
    fn an_attribute_style_gbk_catalog_parses_the_same() {
        let xml = "<?xml version='1.0' encoding='GBK'?><Response><CmdType>Catalog</CmdType><SN>2</SN><DeviceID>34020000002000000001</DeviceID><SumNum>2</SumNum><DeviceList Num='2'>\
<Item DeviceID='34020000001320000002' Name='南门&amp;东门' Parental='0' ParentID='34020000002000000001' Longitude='0' Latitude='0' Status='ONLINE'/>\
<Item DeviceID='34020000001310000003' Name='北门' Status='OFF'></Item></DeviceList></Response>";
        let Body::Catalog(part) = parse(&encode_gb(xml), &l()).unwrap() else {
            panic!()
        };
        assert_eq!(part.items[0].name, "南门&东门");
        assert_eq!(part.items[0].longitude, None, "0 means unknown");
        assert_eq!(part.items[0].status, ItemStatus::On);
        assert_eq!(part.items[1].status, ItemStatus::Off);
        let cat = CatalogAssembler::default()
            .push(part, Instant::now())
            .unwrap()
            .unwrap();
        assert_eq!(cat.cameras().count(), 2);
    }

    #[test]
    fn utf8_bodies_are_read_whatever_they_declare() {
        let xml = "<?xml version=\"1.0\" encoding=\"GB2312\"?><Notify><CmdType>Keepalive</CmdType><SN>7</SN><DeviceID>34020000001320000001</DeviceID><Status>OK</Status><Info>正常</Info></Notify>";
        let b = parse(xml.as_bytes(), &l()).unwrap();
        assert_eq!(
            b,
            Body::Keepalive {
                sn: 7,
                device_id: "34020000001320000001".into(),
                status: "OK".into()
            }
        );
        let k = parse(&keepalive_notify(8, PLATFORM), &l()).unwrap();
        assert!(matches!(k, Body::Keepalive { sn: 8, .. }));
    }

    #[test]
    fn a_catalog_in_parts_is_assembled_by_sn_and_sumnum() {
        let items: Vec<CatalogItem> = (1..=5)
            .map(|i| CatalogItem {
                device_id: format!("340200000013200000{i:02}"),
                name: format!("通道{i}"),
                parental: Some(false),
                ..Default::default()
            })
            .collect();
        let mut asm = CatalogAssembler::default();
        let t = Instant::now();
        let part =
            |sn, its: &[CatalogItem]| match parse(&catalog_response(sn, PLATFORM, 5, its), &l())
                .unwrap()
            {
                Body::Catalog(p) => p,
                other => panic!("{other:?}"),
            };
        assert_eq!(asm.push(part(9, &items[0..2]), t).unwrap(), None);
        // Another SN does not mix in, and a repeated part does not count twice.
        assert_eq!(asm.push(part(10, &items[0..1]), t).unwrap(), None);
        assert_eq!(asm.push(part(9, &items[0..2]), t).unwrap(), None);
        assert_eq!(asm.push(part(9, &items[2..4]), t).unwrap(), None);
        let cat = asm.push(part(9, &items[4..5]), t).unwrap().unwrap();
        assert_eq!(cat.items.len(), 5);
        assert_eq!(cat.items[4].name, "通道5");
        let gone = asm.expire(t + Duration::from_secs(61));
        assert_eq!(
            gone,
            vec![Abandoned {
                device_id: PLATFORM.into(),
                sn: 10,
                got: 1,
                sum_num: 5
            }]
        );
        let empty = CatalogPart {
            sn: 1,
            device_id: PLATFORM.into(),
            sum_num: 0,
            items: vec![],
            skipped: 0,
        };
        assert_eq!(asm.push(empty, t).unwrap().unwrap().items.len(), 0);
    }

    #[test]
    fn the_catalog_query_is_gb2312_and_parses_back() {
        let q = catalog_query(3, PLATFORM);
        assert!(q.starts_with(b"<?xml version=\"1.0\" encoding=\"GB2312\"?>"));
        let b = parse(&q, &l()).unwrap();
        assert_eq!(
            b,
            Body::Other {
                root: Root::Query,
                cmd_type: CmdType::Catalog,
                sn: 3,
                device_id: PLATFORM.into()
            }
        );
    }

    #[test]
    fn unknown_cmdtypes_oversized_truncated_and_wrongly_encoded_bodies_are_refused() {
        let unknown = b"<?xml version=\"1.0\"?><Notify><CmdType>Bogus</CmdType><SN>1</SN><DeviceID>34020000001320000001</DeviceID></Notify>";
        assert_eq!(
            parse(unknown, &l()),
            Err(ManscdpError::UnknownCmdType("Bogus".into()))
        );
        let big = vec![b' '; 2 * 1024 * 1024];
        assert_eq!(parse(&big, &l()), Err(ManscdpError::TooLarge(1024 * 1024)));
        let q = catalog_query(3, PLATFORM);
        assert!(matches!(
            parse(&q[..q.len() - 12], &l()),
            Err(ManscdpError::Xml(_))
        ));
        let mut bad = b"<?xml version=\"1.0\" encoding=\"GB2312\"?><Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>34020000001320000001</DeviceID><Info>".to_vec();
        bad.extend_from_slice(b"\xff\xfe\xff");
        bad.extend_from_slice(b"</Info></Notify>");
        assert_eq!(parse(&bad, &l()), Err(ManscdpError::WrongEncoding("GBK")));
        let bad8 = String::from_utf8_lossy(&bad)
            .replace("GB2312", "UTF-8")
            .replace('\u{fffd}', "");
        let mut bad8 = bad8.into_bytes();
        bad8.splice(130..130, *b"\xc3\x28");
        assert_eq!(
            parse(&bad8, &l()),
            Err(ManscdpError::WrongEncoding("UTF-8"))
        );
        let latin = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><Notify/>";
        assert_eq!(parse(latin, &l()), Err(ManscdpError::UnsupportedEncoding));
        let root = b"<Foo><CmdType>Catalog</CmdType></Foo>";
        assert_eq!(
            parse(root, &l()),
            Err(ManscdpError::UnknownRoot("Foo".into()))
        );
        let no_sn =
            b"<Query><CmdType>Catalog</CmdType><DeviceID>34020000001320000001</DeviceID></Query>";
        assert_eq!(parse(no_sn, &l()), Err(ManscdpError::Missing("SN")));
        let bad_id = b"<Query><CmdType>Catalog</CmdType><SN>1</SN><DeviceID>123</DeviceID></Query>";
        assert_eq!(parse(bad_id, &l()), Err(ManscdpError::BadValue("DeviceID")));
        let few = Limits {
            max_items: 1,
            ..l()
        };
        let two = catalog_response(
            1,
            PLATFORM,
            2,
            &vec![
                CatalogItem {
                    device_id: "34020000001320000001".into(),
                    ..Default::default()
                };
                2
            ],
        );
        assert_eq!(parse(&two, &few), Err(ManscdpError::TooManyItems(1)));
        let too_many = CatalogPart {
            sum_num: 1_000_000,
            ..Default::default()
        };
        assert!(
            CatalogAssembler::default()
                .push(too_many, Instant::now())
                .is_err()
        );
    }

    #[test]
    fn type_codes_follow_annex_d() {
        assert_eq!(type_code("34020000001320000001"), Some(132));
        assert!(is_camera_id("34020000001310000001"));
        assert!(!is_camera_id("34020000001180000001"));
        assert!(!is_camera_id("3402000000132000000"));
        assert!(!is_camera_id("3402000000132000000a"));
    }

    #[test]
    fn a_parent_path_and_parental_one_exclude_an_item_from_the_leaves() {
        let cat = Catalog {
            device_id: PLATFORM.into(),
            sn: 1,
            items: vec![
                CatalogItem {
                    device_id: "34020000001320000001".into(),
                    parental: Some(true),
                    ..Default::default()
                },
                CatalogItem {
                    device_id: "34020000001320000002".into(),
                    ..Default::default()
                },
                CatalogItem {
                    device_id: "34020000001320000003".into(),
                    parent_id: Some("3402000000/34020000001320000002".into()),
                    ..Default::default()
                },
            ],
        };
        let leaves: Vec<_> = cat.cameras().map(|c| c.device_id.as_str()).collect();
        assert_eq!(leaves, ["34020000001320000003"]);
    }
}

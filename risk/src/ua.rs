//! User-agent classification: one pass of a case-insensitive Aho-Corasick automaton over the
//! header (leftmost-longest matches), recording which kinds of token occur, then a fixed
//! precedence between kinds.
//!
//! Why not a UA-parsing crate: see the crate README (the short version: the parsers we measured
//! either cannot tell a CLI tool from an HTTP library or call both "bots", and they cost more
//! per request than this matcher).

use std::fmt;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use serde::{Deserialize, Serialize};

/// The class of a request's `User-Agent`, as written into the access log's `ua_type` field.
#[derive(Copy, Clone, PartialEq, Eq, Debug, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UaType {
    /// A web browser (a `Mozilla/…` or `Opera/…` product with a rendering engine token).
    Browser,
    /// A crawler, scanner or headless browser that says what it is.
    Bot,
    /// A command-line or manual HTTP tool: curl, Wget, HTTPie, PowerShell, Postman…
    Cli,
    /// An HTTP client library: python-requests, Go-http-client, okhttp, axios…
    Library,
    /// No `User-Agent` header, or one holding only whitespace.
    Empty,
    /// Anything else.
    Unknown,
}

impl UaType {
    /// Every variant, in declaration order.
    pub const ALL: [UaType; 6] = [
        UaType::Browser,
        UaType::Bot,
        UaType::Cli,
        UaType::Library,
        UaType::Empty,
        UaType::Unknown,
    ];

    /// The lowercase name used in the access log and in API filters.
    pub fn as_str(self) -> &'static str {
        match self {
            UaType::Browser => "browser",
            UaType::Bot => "bot",
            UaType::Cli => "cli",
            UaType::Library => "library",
            UaType::Empty => "empty",
            UaType::Unknown => "unknown",
        }
    }

    /// The inverse of [`UaType::as_str`] (exact, lowercase).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for UaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of [`classify_ua`].
#[derive(Copy, Clone, PartialEq, Eq, Debug, Hash)]
pub struct UaClass {
    /// The class.
    pub ua_type: UaType,
    /// The UA names a well-known, declared crawler (search engines, link previewers, …);
    /// only ever true together with [`UaType::Bot`]. Such bots weigh less in the score.
    pub known_crawler: bool,
}

impl UaClass {
    const fn of(ua_type: UaType) -> Self {
        UaClass {
            ua_type,
            known_crawler: false,
        }
    }
}

/// Only this many bytes of a `User-Agent` are examined. Real UAs are shorter (in-app webviews,
/// the longest common ones, stay under 400 bytes); the cap bounds the work an attacker can
/// cause with a huge header, and a client able to hide a token past it could as well have
/// sent a browser UA.
pub const MAX_UA_SCAN: usize = 512;

/// What a token says about the UA that holds it.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Kind {
    /// A well-known, declared crawler (substring match).
    KnownCrawler,
    /// A marker that the client is a bot, crawler, scanner or headless browser (substring).
    Bot,
    /// `+http`: the convention for a bot's info URL, but also used by some libraries
    /// (`node-fetch/1.0 (+https://github.com/…)`), so it ranks below CLI and library names.
    WeakBot,
    /// A CLI tool's product name (must stand as a whole product token).
    Cli,
    /// An HTTP library's product name (must stand as a whole product token).
    Library,
    /// A browser rendering-engine token (substring).
    Engine,
}

impl Kind {
    const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Product names must stand alone: `curl` must not fire inside `curlew`, `java` inside
    /// `javascript`, `node` inside `node-fetch` (which is its own entry).
    const fn bounded(self) -> bool {
        matches!(self, Kind::Cli | Kind::Library)
    }
}

/// Every token, lowercase (matching is ASCII case-insensitive).
const TOKENS: &[(&str, Kind)] = &[
    // Declared crawlers of search engines, link previewers and uptime monitors: they say
    // who they are and publish how to verify it, so they weigh less than unknown bots.
    ("googlebot", Kind::KnownCrawler),
    ("adsbot-google", Kind::KnownCrawler),
    ("mediapartners-google", Kind::KnownCrawler),
    ("apis-google", Kind::KnownCrawler),
    ("feedfetcher-google", Kind::KnownCrawler),
    ("googleother", Kind::KnownCrawler),
    ("google-inspectiontool", Kind::KnownCrawler),
    ("storebot-google", Kind::KnownCrawler),
    ("bingbot", Kind::KnownCrawler),
    ("adidxbot", Kind::KnownCrawler),
    ("bingpreview", Kind::KnownCrawler),
    ("msnbot", Kind::KnownCrawler),
    ("duckduckbot", Kind::KnownCrawler),
    ("applebot", Kind::KnownCrawler),
    ("yandex.com/bots", Kind::KnownCrawler),
    ("baiduspider", Kind::KnownCrawler),
    ("yahoo! slurp", Kind::KnownCrawler),
    ("seznambot", Kind::KnownCrawler),
    ("petalbot", Kind::KnownCrawler),
    ("qwantbot", Kind::KnownCrawler),
    ("archive.org_bot", Kind::KnownCrawler),
    ("facebookexternalhit", Kind::KnownCrawler),
    ("facebookcatalog", Kind::KnownCrawler),
    ("twitterbot", Kind::KnownCrawler),
    ("linkedinbot", Kind::KnownCrawler),
    ("slackbot", Kind::KnownCrawler),
    ("slack-imgproxy", Kind::KnownCrawler),
    ("discordbot", Kind::KnownCrawler),
    ("telegrambot", Kind::KnownCrawler),
    ("whatsapp/", Kind::KnownCrawler),
    ("pinterestbot", Kind::KnownCrawler),
    ("uptimerobot", Kind::KnownCrawler),
    ("pingdom.com_bot", Kind::KnownCrawler),
    // Generic bot markers. "bot" covers the long tail (AhrefsBot, SemrushBot, MJ12bot…);
    // its one known false positive, CUBOT phones, is excluded in `classify_ua_bytes`.
    ("bot", Kind::Bot),
    ("crawl", Kind::Bot),
    ("spider", Kind::Bot),
    ("slurp", Kind::Bot),
    ("scrapy", Kind::Bot),
    ("archiver", Kind::Bot),
    ("headlesschrome", Kind::Bot),
    ("phantomjs", Kind::Bot),
    ("lighthouse", Kind::Bot),
    // Scanners that announce themselves.
    ("zgrab", Kind::Bot),
    ("masscan", Kind::Bot),
    ("nmap", Kind::Bot),
    ("nuclei", Kind::Bot),
    ("sqlmap", Kind::Bot),
    ("nikto", Kind::Bot),
    ("wpscan", Kind::Bot),
    ("gobuster", Kind::Bot),
    ("dirbuster", Kind::Bot),
    ("censysinspect", Kind::Bot),
    ("expanse, a palo alto", Kind::Bot),
    ("+http", Kind::WeakBot),
    // Command-line and manual tools.
    ("curl", Kind::Cli),
    ("wget", Kind::Cli),
    ("wget2", Kind::Cli),
    ("httpie", Kind::Cli),
    ("xh", Kind::Cli),
    ("aria2", Kind::Cli),
    ("lynx", Kind::Cli),
    ("links", Kind::Cli),
    ("elinks", Kind::Cli),
    ("w3m", Kind::Cli),
    ("libfetch", Kind::Cli),
    ("powershell", Kind::Cli),
    ("windowspowershell", Kind::Cli),
    ("postmanruntime", Kind::Cli),
    ("insomnia", Kind::Cli),
    ("hurl", Kind::Cli),
    ("apachebench", Kind::Cli),
    ("k6", Kind::Cli),
    // HTTP client libraries and runtimes' default UAs.
    ("python-requests", Kind::Library),
    ("python-urllib", Kind::Library),
    ("python-httpx", Kind::Library),
    ("python-urllib3", Kind::Library),
    ("python", Kind::Library),
    ("aiohttp", Kind::Library),
    ("httpx", Kind::Library),
    ("go-http-client", Kind::Library),
    ("okhttp", Kind::Library),
    ("axios", Kind::Library),
    ("node-fetch", Kind::Library),
    ("undici", Kind::Library),
    ("node", Kind::Library),
    ("got", Kind::Library),
    ("deno", Kind::Library),
    ("bun", Kind::Library),
    ("java", Kind::Library),
    ("java-http-client", Kind::Library),
    ("apache-httpclient", Kind::Library),
    ("apache-httpasyncclient", Kind::Library),
    ("commons-httpclient", Kind::Library),
    ("ktor-client", Kind::Library),
    ("libwww-perl", Kind::Library),
    ("lwp-trivial", Kind::Library),
    ("www-mechanize", Kind::Library),
    ("mechanize", Kind::Library),
    ("ruby", Kind::Library),
    ("faraday", Kind::Library),
    ("rest-client", Kind::Library),
    ("http.rb", Kind::Library),
    ("typhoeus", Kind::Library),
    ("excon", Kind::Library),
    ("httpclient", Kind::Library),
    ("guzzlehttp", Kind::Library),
    ("php", Kind::Library),
    ("wordpress", Kind::Library),
    ("dart", Kind::Library),
    ("reqwest", Kind::Library),
    ("hyper", Kind::Library),
    ("restsharp", Kind::Library),
    ("cpp-httplib", Kind::Library),
    ("libcurl", Kind::Library),
    // Browser rendering engines (checked together with a `Mozilla/` or `Opera/` prefix).
    ("applewebkit/", Kind::Engine),
    ("gecko/", Kind::Engine),
    ("trident/", Kind::Engine),
    ("presto/", Kind::Engine),
    ("msie ", Kind::Engine),
];

static MATCHER: LazyLock<AhoCorasick> = LazyLock::new(|| {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        // Leftmost-longest: "python-requests" wins over "python", "googlebot" over "bot".
        // Tokens nested in a longer one never decide anything the longer one does not.
        .match_kind(MatchKind::LeftmostLongest)
        .kind(Some(AhoCorasickKind::DFA))
        .build(TOKENS.iter().map(|(t, _)| t))
        // The pattern set is a constant, far below any size limit; `tests::matcher_builds`
        // exercises this on every test run.
        .expect("the constant UA token set compiles")
});

/// Classify a `User-Agent` header value. See [`classify_ua_bytes`].
pub fn classify_ua(ua: &str) -> UaClass {
    classify_ua_bytes(ua.as_bytes())
}

/// Classify raw `User-Agent` header bytes (they need not be UTF-8).
///
/// Precedence when a UA holds tokens of several kinds: known crawler, bot marker, CLI tool,
/// HTTP library, `+http` info URL (bot), browser engine, unknown.
pub fn classify_ua_bytes(ua: &[u8]) -> UaClass {
    let ua = ua.trim_ascii();
    if ua.is_empty() {
        return UaClass::of(UaType::Empty);
    }
    let scan = &ua[..ua.len().min(MAX_UA_SCAN)];
    let mut seen = 0u8;
    for m in MATCHER.find_iter(scan) {
        let Some(&(token, kind)) = TOKENS.get(m.pattern().as_usize()) else {
            continue;
        };
        if kind.bounded() && !is_product_token(scan, m.start(), m.end()) {
            continue;
        }
        if token == "bot"
            && m.start() >= 2
            && scan[m.start() - 2..m.start()].eq_ignore_ascii_case(b"cu")
        {
            continue; // CUBOT, a phone maker, in an Android browser UA
        }
        seen |= kind.bit();
    }
    let has = |k: Kind| seen & k.bit() != 0;
    if has(Kind::KnownCrawler) {
        return UaClass {
            ua_type: UaType::Bot,
            known_crawler: true,
        };
    }
    let ua_type = if has(Kind::Bot) {
        UaType::Bot
    } else if has(Kind::Cli) {
        UaType::Cli
    } else if has(Kind::Library) {
        UaType::Library
    } else if has(Kind::WeakBot) {
        UaType::Bot
    } else if has(Kind::Engine) && starts_like_browser(scan) {
        UaType::Browser
    } else {
        UaType::Unknown
    };
    UaClass::of(ua_type)
}

/// Whether `ua[start..end]` is a whole product name: preceded by the start or a separator,
/// followed by the end, a version slash, or a separator, and not inside a parenthesised
/// comment, where browsers put device models that could collide with short names
/// (`(Linux; Android 12; XH)`).
fn is_product_token(ua: &[u8], start: usize, end: usize) -> bool {
    let before_ok = start == 0 || matches!(ua[start - 1], b' ' | b';' | b',' | b'\t');
    let after_ok = ua
        .get(end)
        .is_none_or(|b| matches!(b, b'/' | b' ' | b')' | b';' | b',' | b'\t'));
    before_ok && after_ok && !inside_comment(&ua[..start])
}

/// Whether the end of `prefix` lies inside parentheses. Only reached for candidate product
/// names (a few per UA at most), so the rescan is cheap.
fn inside_comment(prefix: &[u8]) -> bool {
    let depth = prefix.iter().fold(0u32, |d, &b| match b {
        b'(' => d.saturating_add(1),
        b')' => d.saturating_sub(1),
        _ => d,
    });
    depth > 0
}

fn starts_like_browser(ua: &[u8]) -> bool {
    let prefix = |p: &[u8]| ua.len() >= p.len() && ua[..p.len()].eq_ignore_ascii_case(p);
    prefix(b"mozilla/") || prefix(b"opera/")
}

/// Whether the UA holds bytes no browser sends: control characters (other than tab) or
/// anything outside ASCII. Only the scanned prefix is examined.
pub(crate) fn has_odd_bytes(ua: &[u8]) -> bool {
    // A branch-free fold rather than `any`: without the early exit the compiler vectorizes
    // it, and the common case (a clean UA) reads every byte anyway.
    ua[..ua.len().min(MAX_UA_SCAN)]
        .iter()
        .fold(false, |odd, &b| {
            odd | ((b < 0x20) & (b != b'\t')) | (b >= 0x7f)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matcher_builds() {
        assert_eq!(MATCHER.patterns_len(), TOKENS.len());
    }

    #[test]
    fn tokens_are_lowercase_and_unique() {
        for (i, (t, _)) in TOKENS.iter().enumerate() {
            assert_eq!(*t, t.to_ascii_lowercase(), "token {t:?} must be lowercase");
            assert!(
                !TOKENS[..i].iter().any(|(u, _)| u == t),
                "duplicate token {t:?}"
            );
        }
    }

    #[track_caller]
    fn check(ua: &str, want: UaType, known: bool) {
        let got = classify_ua(ua);
        assert_eq!(
            got,
            UaClass {
                ua_type: want,
                known_crawler: known
            },
            "UA {ua:?}"
        );
    }

    #[test]
    fn classifies_real_world_user_agents() {
        use UaType::*;
        let table: &[(&str, UaType, bool)] = &[
            // Declared, well-known crawlers.
            ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Bot, true),
            ("Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.199 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Bot, true),
            ("Googlebot-Image/1.0", Bot, true),
            ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", Bot, true),
            ("Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36", Bot, true),
            ("DuckDuckBot/1.1; (+http://duckduckgo.com/duckduckbot.html)", Bot, true),
            ("Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)", Bot, true),
            ("Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)", Bot, true),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; +http://www.apple.com/go/applebot)", Bot, true),
            ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", Bot, true),
            ("Twitterbot/1.0", Bot, true),
            ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", Bot, true),
            ("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", Bot, true),
            ("Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)", Bot, true),
            // Other bots, scanners, headless browsers.
            ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", Bot, false),
            ("Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)", Bot, false),
            ("Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)", Bot, false),
            ("Scrapy/2.11.0 (+https://scrapy.org)", Bot, false),
            ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36", Bot, false),
            ("Mozilla/5.0 zgrab/0.x", Bot, false),
            ("Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:000001)", Bot, false),
            ("sqlmap/1.7.2#stable (https://sqlmap.org)", Bot, false),
            ("Mozilla/5.0 (compatible; CensysInspect/1.1; +https://about.censys.io/)", Bot, false),
            ("Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)", Bot, false),
            ("SomeFeedReader/2.0 (+https://feeds.example/about)", Bot, false),
            // CLI tools.
            ("curl/8.4.0", Cli, false),
            ("curl/7.68.0", Cli, false),
            ("Wget/1.21.3", Cli, false),
            ("Wget/1.20.3 (linux-gnu)", Cli, false),
            ("HTTPie/3.2.2", Cli, false),
            ("xh/0.20.1", Cli, false),
            ("aria2/1.36.0", Cli, false),
            ("Lynx/2.9.0dev.12 libwww-FM/2.14 SSL-MM/1.4.1 OpenSSL/3.0.11", Cli, false),
            ("w3m/0.5.3+git20230121", Cli, false),
            ("Mozilla/5.0 (Windows NT; Windows NT 10.0; en-US) WindowsPowerShell/5.1.19041.3570", Cli, false),
            ("PostmanRuntime/7.36.0", Cli, false),
            ("ApacheBench/2.3", Cli, false),
            // HTTP libraries.
            ("python-requests/2.31.0", Library, false),
            ("Python-urllib/3.11", Library, false),
            ("python-httpx/0.25.2", Library, false),
            ("Python/3.11 aiohttp/3.9.1", Library, false),
            ("Go-http-client/1.1", Library, false),
            ("Go-http-client/2.0", Library, false),
            ("okhttp/4.12.0", Library, false),
            ("axios/1.6.2", Library, false),
            ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", Library, false),
            ("node-fetch", Library, false),
            ("node", Library, false),
            ("undici", Library, false),
            ("got (https://github.com/sindresorhus/got)", Library, false),
            ("Java/17.0.2", Library, false),
            ("Java-http-client/17.0.9", Library, false),
            ("Apache-HttpClient/4.5.14 (Java/17.0.9)", Library, false),
            ("libwww-perl/6.72", Library, false),
            ("Ruby", Library, false),
            ("Faraday v2.7.10", Library, false),
            ("GuzzleHttp/7", Library, false),
            ("Dart/3.2 (dart:io)", Library, false),
            ("reqwest/0.12.4", Library, false),
            // Browsers, desktop and mobile.
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", Browser, false),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", Browser, false),
            ("Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36", Browser, false),
            ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", Browser, false),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0", Browser, false),
            ("Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0", Browser, false),
            ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15", Browser, false),
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Mobile/15E148 Safari/604.1", Browser, false),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.91", Browser, false),
            ("Mozilla/5.0 (Linux; Android 10; HD1913) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36 EdgA/120.0.2210.115", Browser, false),
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 OPR/106.0.0.0", Browser, false),
            ("Mozilla/5.0 (Windows NT 10.0; Trident/7.0; rv:11.0) like Gecko", Browser, false),
            ("Opera/9.80 (Windows NT 6.1; WOW64) Presto/2.12.388 Version/12.18", Browser, false),
            ("Mozilla/5.0 (Linux; Android 12; CUBOT X50) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Mobile Safari/537.36", Browser, false),
            ("MOZILLA/5.0 (X11; LINUX X86_64; RV:121.0) GECKO/20100101 FIREFOX/121.0", Browser, false),
            // Empty and unknown.
            ("", Empty, false),
            ("   ", Empty, false),
            (" \t ", Empty, false),
            ("-", Unknown, false),
            ("Mozilla/5.0", Unknown, false),
            ("Mozilla/5.0 (compatible)", Unknown, false),
            ("MyApp/1.0 CFNetwork/1410.0.3 Darwin/22.6.0", Unknown, false),
            ("Mozilla/5.0 (Linux; Android 12; XH) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Mobile Safari/537.36", Browser, false),
            ("Mozilla/5.0 (Linux; Android 12; Links Build/X) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Mobile Safari/537.36", Browser, false),
            ("curlew/1.0", Unknown, false),
            ("javascript-engine/2", Unknown, false),
        ];
        for &(ua, want, known) in table {
            check(ua, want, known);
        }
    }

    #[test]
    fn non_utf8_and_huge_input_classify_without_panic() {
        assert_eq!(classify_ua_bytes(b"\xff\xfe curl/8.0").ua_type, UaType::Cli);
        assert_eq!(classify_ua_bytes(b"\xff").ua_type, UaType::Unknown);
        let mut long = b"curl/8.0 ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 100_000));
        assert_eq!(classify_ua_bytes(&long).ua_type, UaType::Cli);
        // A token past the scan cap is not seen.
        let mut hidden = vec![b'a'; MAX_UA_SCAN];
        hidden.extend_from_slice(b" curl/8.0");
        assert_eq!(classify_ua_bytes(&hidden).ua_type, UaType::Unknown);
    }

    #[test]
    fn odd_bytes() {
        assert!(!has_odd_bytes(b"Mozilla/5.0 (X11)\tx"));
        assert!(has_odd_bytes(b"Mozilla/5.0\x01"));
        assert!(has_odd_bytes("Mozilla/5.0 é".as_bytes()));
        assert!(has_odd_bytes(b"Mozilla/5.0\x7f"));
    }

    #[test]
    fn ua_type_names_round_trip() {
        for t in UaType::ALL {
            assert_eq!(UaType::parse(t.as_str()), Some(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        assert_eq!(UaType::parse("Browser"), None);
        assert_eq!(UaType::parse(""), None);
    }
}

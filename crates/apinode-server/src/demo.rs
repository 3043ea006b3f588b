//! `apinode demo`: generates the example customers dataset, builds `examples/customers`
//! into a bundle, starts a node with it imported and active, and prints queries to paste.

use crate::config::{DEFAULT_BIND, DEFAULT_DATA_DIR, NodeConfig};
use crate::serve::{init_tracing, open_runtime, serve, tokio_runtime};
use anyhow::Context;
use apinode_bundle::BuildOptions;
use clap::Args;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

const SERVICE_TOML: &str = include_str!("../../../examples/customers/service.toml");
const SERVICE: &str = "customers";
const DEMO_KEY: &str = "customers-demo-key";

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// The node's data directory; the demo's files go to its `demo/` folder.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[arg(long, default_value = DEFAULT_BIND)]
    bind: SocketAddr,
    /// Number of customers to generate.
    #[arg(long, default_value_t = 100_000)]
    rows: u32,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    init_tracing();
    let service_dir = args.data_dir.join("demo").join(SERVICE);
    std::fs::create_dir_all(service_dir.join("data"))
        .with_context(|| format!("cannot create {}", service_dir.display()))?;
    std::fs::write(service_dir.join("service.toml"), SERVICE_TOML)?;
    let csv = service_dir.join("data").join("customers.csv");
    write_customers(&csv, args.rows)?;
    let archive = args.data_dir.join("demo").join("customers.zip");
    let report = apinode_bundle::build(&service_dir, &archive, &BuildOptions::default())
        .context("cannot build the example service")?;
    let generation = report.manifest.version.clone();
    eprintln!(
        "built {} ({} customers, generation {generation})",
        archive.display(),
        args.rows
    );

    let config = NodeConfig::resolve(None, Some(args.data_dir.clone()), Some(args.bind))?;
    tokio_runtime()?.block_on(async move {
        let (runtime, generated) = open_runtime(&config).await?;
        // Show a working admin key: the environment's, the one just generated, or a new one
        // (keys are stored hashed, so an earlier run's cannot be shown again).
        let admin_key = match (std::env::var("APINODE_ADMIN_KEY"), generated) {
            (Ok(key), _) if !key.is_empty() => key,
            (_, Some(key)) => key,
            _ => {
                runtime
                    .create_admin_key(Some("demo".into()), None, None, None, "demo")?
                    .1
            }
        };
        let absolute = std::fs::canonicalize(&archive)?;
        let importer = runtime.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            match importer.create_service(SERVICE, "demo") {
                Ok(()) | Err(apinode_runtime::Error::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            importer.import_generation_from_file(SERVICE, &absolute, "demo")?;
            importer.switch_to(SERVICE, &generation, "demo")?;
            Ok(())
        })
        .await??;
        serve(runtime, &config, |addr| {
            print_tour(&addr.to_string(), &admin_key)
        })
        .await
    })
}

fn print_tour(addr: &str, admin_key: &str) {
    let url = format!("http://{addr}");
    println!(
        r#"
The `customers` service is live on {url} (generation imported and active).

  # one customer by id (HTTP Basic, the service key as user name)
  curl -s -u {DEMO_KEY}: {url}/public/api/v1/customers/customer-by-id/lookup -d '{{"data": {{"customer_id": 42}}}}'

  # several at once, by email
  curl -s -u {DEMO_KEY}: {url}/public/api/v1/customers/customer-by-email/lookup-multi \
       -d '{{"items": [{{"data": {{"email": "{e1}"}}}}, {{"data": {{"email": "{e2}"}}}}]}}'

  # composite key: country + account number
  curl -s -u {DEMO_KEY}: {url}/public/api/v1/customers/account/lookup -d '{{"data": {{"country": "FR", "account": 7}}}}'

  # the admin API (admin key: {admin_key})
  curl -s -u {admin_key}: {url}/admin/api/services/customers/generations

  # the official Python client (pip install dataiku-api-client)
  python3 -c 'import dataikuapi; c = dataikuapi.APINodeClient("{url}", "customers", api_key="{DEMO_KEY}"); print(c.lookup_record("customer-by-id", {{"customer_id": 42}}))'

Stop with Ctrl-C. State is kept in the data directory; `apinode serve` serves it again.
"#,
        e1 = email(1),
        e2 = email(2),
    );
    let _ = std::io::stdout().flush();
}

const FIRST_NAMES: &[&str] = &[
    "Alice", "Bruno", "Chloe", "David", "Emma", "Farid", "Giulia", "Hugo", "Ines", "Jonas",
    "Keiko", "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara",
];
const LAST_NAMES: &[&str] = &[
    "Martin", "Bernard", "Dubois", "Smith", "Garcia", "Muller", "Rossi", "Tanaka", "Nguyen",
    "Kowalski", "Silva", "Johnson", "Lefebvre", "Moreau", "Schmidt", "Ivanova",
];
const PLACES: &[(&str, &[&str])] = &[
    ("FR", &["Paris", "Lyon", "Marseille", "Nantes"]),
    ("US", &["New York", "Austin", "Seattle", "Denver"]),
    ("DE", &["Berlin", "Munich", "Hamburg"]),
    ("JP", &["Tokyo", "Osaka"]),
    ("BR", &["Sao Paulo", "Recife"]),
    ("IT", &["Rome", "Milan", "Turin"]),
];
const SEGMENTS: &[&str] = &["bronze", "silver", "gold", "platinum"];

fn email(id: u32) -> String {
    let first = FIRST_NAMES[(id as usize * 7) % FIRST_NAMES.len()].to_ascii_lowercase();
    let last = LAST_NAMES[(id as usize * 13) % LAST_NAMES.len()].to_ascii_lowercase();
    format!("{first}.{last}.{id}@example.com")
}

/// SplitMix64: a tiny deterministic generator, so the same row count always gives the same
/// file (and so the same bundle and generation id).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Writes the customers CSV: one row per customer, ids 1..=rows.
pub(crate) fn write_customers(path: &Path, rows: u32) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = BufWriter::new(file);
    writeln!(
        out,
        "customer_id,email,first_name,last_name,country,city,account_number,segment,signup_date,lifetime_value,is_active,age"
    )?;
    let mut rng = SplitMix(42);
    let mut accounts = vec![0u32; PLACES.len()];
    for id in 1..=rows {
        let (country, cities) = PLACES[rng.below(PLACES.len())];
        let place = PLACES.iter().position(|(c, _)| *c == country).unwrap_or(0);
        accounts[place] += 1;
        let city = cities[rng.below(cities.len())];
        let segment = SEGMENTS[rng.below(SEGMENTS.len())];
        let day = 1 + rng.below(28);
        let month = 1 + rng.below(12);
        let year = 2015 + rng.below(11);
        let ltv = rng.below(1_000_000) as f64 / 100.0;
        let active = rng.below(10) < 8;
        // About one customer in twenty has no known age (an empty cell, read as NULL).
        let age = if rng.below(20) == 0 {
            String::new()
        } else {
            (18 + rng.below(70)).to_string()
        };
        writeln!(
            out,
            "{id},{},{},{},{country},{city},{},{segment},{year}-{month:02}-{day:02},{ltv:.2},{active},{age}",
            email(id),
            FIRST_NAMES[(id as usize * 7) % FIRST_NAMES.len()],
            LAST_NAMES[(id as usize * 13) % LAST_NAMES.len()],
            accounts[place],
        )?;
    }
    out.flush()?;
    Ok(())
}

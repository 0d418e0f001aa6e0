//! A whole connection: the input is everything a client sends, handshake and requests.
//! The server must neither panic nor hang, whatever the bytes.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nbd::testing::MemDevice;
use nbd::{Export, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let exports = vec![
            Export {
                name: "default".into(),
                description: "fuzz".into(),
                device: Arc::new(MemDevice::new(1 << 16)),
                read_only: false,
            },
            Export { name: "ro".into(), description: String::new(), device: Arc::new(MemDevice::new(4096)), read_only: true },
        ];
        let server = Server::new(exports, ServerConfig { max_block: 1 << 20, inflight_bytes: 2 << 20, ..Default::default() }).unwrap();
        let (client, server_side) = tokio::io::duplex(1 << 16);
        let (sr, sw) = tokio::io::split(server_side);
        let (mut cr, mut cw) = tokio::io::split(client);
        let input = data.to_vec();
        let feeder = async move {
            // The server may close early; a failed write is fine.
            let _ = cw.write_all(&input).await;
            let _ = cw.shutdown().await;
        };
        let drain = async move {
            let mut sink = Vec::new();
            let _ = cr.read_to_end(&mut sink).await;
        };
        let serve = async move {
            let _ = server.serve(sr, sw).await;
        };
        let all = async { tokio::join!(feeder, drain, serve) };
        tokio::time::timeout(std::time::Duration::from_secs(5), all).await.expect("connection hung");
    });
});

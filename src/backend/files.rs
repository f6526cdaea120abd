//! What is inside an instance: its files, its log files and its console log.

use super::BackendError;
use super::types::{ByteStream, Download, FilePull, FilePush};
use crate::names::{InstanceName, LogFileName, ProjectName};

#[async_trait::async_trait]
pub trait Files: Send + Sync {
    /// A file's content or a directory's entries (`path` is absolute).
    async fn pull_file(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        path: &str,
    ) -> Result<FilePull, BackendError>;

    /// Creates or overwrites the file at `path` (absolute) with `body`.
    async fn push_file(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        path: &str,
        opts: FilePush,
        body: ByteStream,
    ) -> Result<(), BackendError>;

    /// Names of the instance's log files.
    async fn list_instance_logs(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
    ) -> Result<Vec<String>, BackendError>;

    async fn get_instance_log(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
        file: &LogFileName,
    ) -> Result<Download, BackendError>;

    /// What the instance wrote to its console (text).
    async fn console_log(
        &self,
        project: &ProjectName,
        instance: &InstanceName,
    ) -> Result<Download, BackendError>;
}

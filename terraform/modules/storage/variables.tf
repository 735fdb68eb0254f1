variable "name" {
  description = "Prefix for resource names (the cluster name)."
  type        = string
}

variable "bucket_name" {
  description = "The artifact bucket's name; null derives one from the cluster name, account and region."
  type        = string
  default     = null
}

variable "checkpoint_prefix" {
  description = "Key prefix under which agents write checkpoints (ends with a slash)."
  type        = string
}

variable "checkpoint_retention_days" {
  description = "Checkpoint objects older than this are expired (they become noncurrent versions)."
  type        = number
}

variable "noncurrent_version_retention_days" {
  description = "Noncurrent object versions are deleted this many days after they were replaced or expired."
  type        = number
}

variable "access_log_retention_days" {
  description = "How long S3 server access logs are kept."
  type        = number
}

variable "force_destroy" {
  description = "Let terraform destroy delete the buckets with everything in them."
  type        = bool
}

variable "name" {
  description = "Prefix for resource names (the cluster name)."
  type        = string
}

variable "agent_group_name" {
  description = "Name of the agent auto scaling group the coordinators may change."
  type        = string
}

variable "bucket_arn" {
  description = "ARN of the artifact bucket."
  type        = string
}

variable "checkpoint_prefix" {
  description = "Key prefix of checkpoints in the artifact bucket (ends with a slash)."
  type        = string
}

variable "dist_prefix" {
  description = "Key prefix of the release agents install at boot (ends with a slash)."
  type        = string
}

variable "kms_key_arn" {
  description = "The key that encrypts the artifact bucket and the agent key parameter."
  type        = string
}

variable "agent_key_parameter_name" {
  description = "SSM parameter (SecureString) that holds agent-key.pem."
  type        = string
}

variable "agent_certificates_prefix" {
  description = "Key prefix of per-instance agent certificates (`flotilla certs issue-instances`); each instance may read only its own role session's folder."
  type        = string
}

variable "agent_etcd_key_parameter_name" {
  description = "SSM parameter (SecureString) that holds etcd/agent-key.pem, the agents' etcd client key."
  type        = string
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore to every role, for shell access without SSH."
  type        = bool
}

# --- cluster ----------------------------------------------------------------------------

variable "region" {
  description = "AWS region of the cluster, e.g. us-east-1. Pick one with g5 capacity in at least three zones."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "cluster_name" {
  description = "Name of the cluster; prefixes every resource name and is the value of the flotilla:cluster tag."
  type        = string
  default     = "flotilla"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name must be 3 to 24 characters: lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen (it becomes part of bucket and role names)."
  }
}

variable "tags" {
  description = "Extra tags for every resource (for example owner or cost centre)."
  type        = map(string)
  default     = {}
}

# --- network ----------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "Address range of the VPC, an IPv4 /16; public and private subnets are /20s carved from it."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(regex("^[0-9.]+/16$", var.vpc_cidr)) && can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be an IPv4 /16, such as 10.40.0.0/16 (subnets are /20s taken from it)."
  }
}

variable "availability_zones" {
  description = "Availability zones of the region to use, in order (2 to 6; 3 tolerates a zone outage). Pick zones that offer the agent instance types: g5 is not in every zone. Coordinators and etcd members go one per zone, agents anywhere among them."
  type        = list(string)

  validation {
    condition     = length(var.availability_zones) >= 2 && length(var.availability_zones) <= 6 && length(distinct(var.availability_zones)) == length(var.availability_zones)
    error_message = "availability_zones must name 2 to 6 different zones."
  }

  validation {
    condition     = alltrue([for zone in var.availability_zones : can(regex("^${var.region}[a-z]$", zone))])
    error_message = "Every entry of availability_zones must be a zone of the chosen region (region us-east-1: us-east-1a, us-east-1b, ...)."
  }
}

variable "enable_nat_gateway" {
  description = "Give private subnets internet access through NAT. Needed for package installs and the AWS APIs (Auto Scaling, SSM, EC2 discovery); S3 goes through a gateway endpoint either way."
  type        = bool
  default     = true
}

variable "single_nat_gateway" {
  description = "Share one NAT gateway among all zones (cheaper) instead of one per zone (survives the loss of a zone)."
  type        = bool
  default     = true
}

variable "flow_log_retention_days" {
  description = "Days VPC flow logs are kept in CloudWatch Logs."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_log_retention_days)
    error_message = "flow_log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653)."
  }
}

# --- access -----------------------------------------------------------------------------

variable "client_cidrs" {
  description = "Networks whose users may reach the coordinators over QUIC (7070/udp) to submit and watch sweeps: a VPN range, an office, a peered VPC. Agents are allowed by security group, not here."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for cidr in var.client_cidrs : can(cidrhost(cidr, 0)) && cidr != "0.0.0.0/0"])
    error_message = "client_cidrs must be IPv4 CIDR blocks, and not 0.0.0.0/0."
  }
}

variable "dashboard_cidrs" {
  description = "Networks that may open Grafana (3000/tcp) and Prometheus (9090/tcp) on the monitoring host."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for cidr in var.dashboard_cidrs : can(cidrhost(cidr, 0)) && cidr != "0.0.0.0/0"])
    error_message = "dashboard_cidrs must be IPv4 CIDR blocks, and not 0.0.0.0/0."
  }
}

variable "admin_ssh_cidrs" {
  description = "Networks that may SSH (22/tcp) to every host. Empty (the default) opens no SSH port: use SSM Session Manager, which can also carry Ansible's SSH."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for cidr in var.admin_ssh_cidrs : can(cidrhost(cidr, 0)) && cidr != "0.0.0.0/0"])
    error_message = "admin_ssh_cidrs must be IPv4 CIDR blocks, and not 0.0.0.0/0."
  }
}

variable "ssh_key_name" {
  description = "Existing EC2 key pair to install on every host for SSH (Ansible connects with it, directly or through Session Manager); null for none."
  type        = string
  default     = null
}

variable "enable_ssm_session_manager" {
  description = "Attach AmazonSSMManagedInstanceCore to every instance role so that hosts can be reached through SSM Session Manager without an open SSH port."
  type        = bool
  default     = true
}

# --- control plane ----------------------------------------------------------------------

variable "coordinator_count" {
  description = "Coordinator hosts, each also an etcd member: 3 tolerates the loss of one, 5 of two."
  type        = number
  default     = 3

  validation {
    condition     = contains([3, 5], var.coordinator_count)
    error_message = "coordinator_count must be 3 or 5 (etcd needs an odd member count for a useful quorum)."
  }
}

variable "coordinator_instance_type" {
  description = "Instance type of the coordinator and etcd hosts."
  type        = string
  default     = "m6i.large"
}

variable "coordinator_root_volume_size" {
  description = "Root volume of each coordinator host in GiB; etcd keeps its data there."
  type        = number
  default     = 40

  validation {
    condition     = var.coordinator_root_volume_size >= 20
    error_message = "coordinator_root_volume_size must be at least 20 GiB."
  }
}

variable "coordinator_termination_protection" {
  description = "Protect coordinator hosts from API termination. Set false and apply before terraform destroy."
  type        = bool
  default     = true
}

variable "server_ami_id" {
  description = "AMI for the coordinator and monitoring hosts; null picks the newest Canonical image matching server_ami_name_pattern."
  type        = string
  default     = null
}

variable "server_ami_name_pattern" {
  description = "Name filter for the Canonical Ubuntu image of the coordinator and monitoring hosts."
  type        = string
  default     = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
}

# --- agents -----------------------------------------------------------------------------

variable "agent_instance_types" {
  description = "Instance types of the agent group, in on-demand priority order. Each should have one GPU (the agent offers one slot per GPU)."
  type        = list(string)
  default     = ["g5.xlarge", "g5.2xlarge"]

  validation {
    condition     = length(var.agent_instance_types) > 0 && alltrue([for type in var.agent_instance_types : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", type))])
    error_message = "agent_instance_types must list at least one instance type such as g5.xlarge."
  }
}

variable "agent_max_size" {
  description = "Most agents the coordinator may run at once. The group's minimum is 0: an idle fleet scales to zero."
  type        = number
  default     = 4

  validation {
    condition     = var.agent_max_size >= 1 && var.agent_max_size <= 200 && floor(var.agent_max_size) == var.agent_max_size
    error_message = "agent_max_size must be a whole number from 1 to 200."
  }
}

variable "agent_on_demand_base_capacity" {
  description = "The first this many agents run on-demand (not interruptible); the rest are spot. 0 makes the whole fleet spot."
  type        = number
  default     = 0

  validation {
    condition     = var.agent_on_demand_base_capacity >= 0 && var.agent_on_demand_base_capacity <= var.agent_max_size && floor(var.agent_on_demand_base_capacity) == var.agent_on_demand_base_capacity
    error_message = "agent_on_demand_base_capacity must be a whole number from 0 to agent_max_size."
  }
}

variable "agent_on_demand_percentage_above_base_capacity" {
  description = "Share (percent) of on-demand agents above the base capacity; 0 means all spot."
  type        = number
  default     = 0

  validation {
    condition     = var.agent_on_demand_percentage_above_base_capacity >= 0 && var.agent_on_demand_percentage_above_base_capacity <= 100
    error_message = "agent_on_demand_percentage_above_base_capacity must be from 0 to 100."
  }
}

variable "agent_spot_allocation_strategy" {
  description = "How the group chooses spot pools; price-capacity-optimized trades a little price for fewer interruptions."
  type        = string
  default     = "price-capacity-optimized"

  validation {
    condition     = contains(["price-capacity-optimized", "capacity-optimized", "capacity-optimized-prioritized", "lowest-price"], var.agent_spot_allocation_strategy)
    error_message = "agent_spot_allocation_strategy must be price-capacity-optimized, capacity-optimized, capacity-optimized-prioritized or lowest-price."
  }
}

variable "agent_lifecycle_hook_heartbeat_timeout" {
  description = "Seconds a terminating agent instance is held so that its agent can drain and checkpoint; the coordinator completes the hook earlier when the drain is done."
  type        = number
  default     = 300

  validation {
    condition     = var.agent_lifecycle_hook_heartbeat_timeout >= 30 && var.agent_lifecycle_hook_heartbeat_timeout <= 7200
    error_message = "agent_lifecycle_hook_heartbeat_timeout must be from 30 to 7200 seconds."
  }
}

variable "agent_ami_id" {
  description = "AMI for the agents, with the NVIDIA driver, CUDA runtime and AWS CLI installed; null picks the newest AWS Deep Learning Base AMI matching agent_ami_name_pattern."
  type        = string
  default     = null
}

variable "agent_ami_name_pattern" {
  description = "Name filter for the Amazon-owned agent image used when agent_ami_id is null."
  type        = string
  default     = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
}

variable "agent_root_device_name" {
  description = "Root device name of the agent image (/dev/sda1 for Ubuntu-based images)."
  type        = string
  default     = "/dev/sda1"
}

variable "agent_root_volume_size" {
  description = "Root volume of each agent in GiB: the image, CUDA libraries and the agent's work directory."
  type        = number
  default     = 150

  validation {
    condition     = var.agent_root_volume_size >= 75
    error_message = "agent_root_volume_size must be at least 75 GiB (the Deep Learning Base AMI's snapshot size)."
  }
}

variable "agent_device" {
  description = "The agent's --device for built-in trainers: cuda fails loudly on a host whose GPU does not answer; auto falls back to the CPU."
  type        = string
  default     = "cuda"

  validation {
    condition     = can(regex("^(auto|cpu|cuda|cuda:[0-9]+)$", var.agent_device))
    error_message = "agent_device must be auto, cpu, cuda or cuda:N."
  }
}

variable "agent_stop_grace" {
  description = "The agent's --stop-grace: how long a stopped trial gets between SIGTERM and SIGKILL."
  type        = string
  default     = "10s"

  validation {
    condition     = can(regex("^[0-9]+(ms|s|m)$", var.agent_stop_grace))
    error_message = "agent_stop_grace must be a duration such as 10s, 500ms or 1m."
  }
}

variable "agent_stop_timeout_seconds" {
  description = "systemd TimeoutStopSec of the agent service: how long a drain may take before systemd kills what is left."
  type        = number
  default     = 150

  validation {
    condition     = var.agent_stop_timeout_seconds >= 30 && var.agent_stop_timeout_seconds <= var.agent_lifecycle_hook_heartbeat_timeout
    error_message = "agent_stop_timeout_seconds must be at least 30 and no more than agent_lifecycle_hook_heartbeat_timeout (the instance must outlive the drain)."
  }
}

variable "agent_per_instance_certificates" {
  description = "Each agent instance waits at boot for a certificate bound to its instance id, which `flotilla certs issue-instances` writes under the agent_certificates_url output (readable by that instance only); false: every agent shares the certificate in the agent_key_parameter_name parameter."
  type        = bool
  default     = true
}

variable "agents_use_etcd" {
  description = "Start agents with --etcd so that built-in trainers' checkpoints are fenced by a lease; opens etcd's client port to the agent security group."
  type        = bool
  default     = true
}

# --- storage ----------------------------------------------------------------------------

variable "artifact_bucket_name" {
  description = "Name of the artifact bucket; null makes CLUSTER_NAME-artifacts-ACCOUNT_ID-REGION."
  type        = string
  default     = null

  validation {
    condition     = var.artifact_bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,56}[a-z0-9]$", var.artifact_bucket_name))
    error_message = "artifact_bucket_name must be a valid S3 bucket name of at most 58 characters (the log bucket adds -logs)."
  }
}

variable "checkpoint_prefix" {
  description = "Key prefix under which agents write checkpoints (the agent's --artifacts is s3://BUCKET/PREFIX, without the final slash)."
  type        = string
  default     = "checkpoints/"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9/_-]*/$", var.checkpoint_prefix))
    error_message = "checkpoint_prefix must be a key prefix ending with a slash, such as checkpoints/."
  }
}

variable "dist_prefix" {
  description = "Key prefix of the release that agents install at boot: flotilla, flotilla.sha256, certs/ca.pem and certs/agent.pem."
  type        = string
  default     = "dist/"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9/_-]*/$", var.dist_prefix))
    error_message = "dist_prefix must be a key prefix ending with a slash, such as dist/."
  }
}

variable "checkpoint_retention_days" {
  description = "Checkpoints older than this many days are expired. Keep it longer than your longest sweep."
  type        = number
  default     = 90

  validation {
    condition     = var.checkpoint_retention_days >= 1
    error_message = "checkpoint_retention_days must be at least 1."
  }
}

variable "noncurrent_version_retention_days" {
  description = "Days a replaced or expired object version is kept before it is deleted for good."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_retention_days >= 1
    error_message = "noncurrent_version_retention_days must be at least 1."
  }
}

variable "access_log_retention_days" {
  description = "Days S3 server access logs of the artifact bucket are kept."
  type        = number
  default     = 365

  validation {
    condition     = var.access_log_retention_days >= 1
    error_message = "access_log_retention_days must be at least 1."
  }
}

variable "artifact_bucket_force_destroy" {
  description = "Let terraform destroy empty and delete the artifact and log buckets. Leave false in production."
  type        = bool
  default     = false
}

# --- monitoring -------------------------------------------------------------------------

variable "monitoring_instance_type" {
  description = "Instance type of the Prometheus and Grafana host."
  type        = string
  default     = "t3.medium"
}

variable "monitoring_root_volume_size" {
  description = "Root volume of the monitoring host in GiB; Prometheus keeps its time series there."
  type        = number
  default     = 50

  validation {
    condition     = var.monitoring_root_volume_size >= 20
    error_message = "monitoring_root_volume_size must be at least 20 GiB."
  }
}
